"""Turning a plan into Celery messages: task names, level chords, the eager release, the supervisor.

Decides nothing about tickets (that is ``work``); only what is sent when.
"""
