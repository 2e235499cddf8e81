"""Serving translations: the Python API (``translator``), UNK replacement (``unk``), the app's model
catalog and cache (``catalog``), Plotly figures (``plots``) and Hub model cards (``model_card``)."""
