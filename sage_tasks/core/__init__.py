"""The pure core: ticket models, graph, cycles, levels, critical path, plan.

Nothing in this package imports celery, kombu, redis or git; a unit test
fails if anything ever does.
"""
