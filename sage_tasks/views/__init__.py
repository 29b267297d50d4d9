"""What people read of a run or a plan: summaries, lanes, the HTML report, the text renderers.

Reads run records (``store``) and plans (``core``); writes nothing but the report file.
"""
