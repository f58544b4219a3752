"""``appliance models import``: a model trained anywhere, brought into the lifecycle.

A model logged to MLflow from a notebook or a script (scikit-learn, XGBoost, LightGBM, PyTorch,
or ONNX already) is loaded with its own MLflow flavour, converted to ONNX with the converter made
for its framework, checked against the original on held-out rows of its dataset, given a drift
profile, and registered exactly as the built-in trainer registers its versions: ``model.onnx``,
``drift_profile.json`` and ``metrics.json`` at the top of the logged model, the same tags, and
the same champion/challenger rule. Nothing is registered until every check has passed.

Modules: ``source`` (where the model is and which framework made it), one ``convert_*`` module per
framework family, ``contract`` (the served input/output layout), ``rows`` (the dataset and its
split), ``parity``, ``steps`` (the import itself) and ``errors``.
"""
