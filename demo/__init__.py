"""The Gradio app's parts; ``app.py`` builds the page from them and launches it.

``checks`` (input limits, model choice, settings), ``endpoints`` (the /translate, /compare and
/model_card API), ``inside`` (the look-inside API: beam tree, what if, scoring, nearest examples),
``render`` (HTML and component updates from the endpoints' JSON), ``page`` (layout and events).
Everything shown comes from the ``nmt`` API; these modules check input and lay it out.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # (before gradio is imported)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
