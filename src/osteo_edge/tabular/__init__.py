"""Clinical risk models on tabular data: leakage-guarded cross-validation, bias analysis, late fusion.

Outputs are screening-aid risk estimates, never a diagnosis (:data:`osteo_edge.artifact.DISCLAIMER`).

Modules (import them directly; this package imports nothing heavy):

- :mod:`.table`    read a CSV, resolve column names, the input schema saved with a model
- :mod:`.leakage`  identifier and target-proxy guard run before any training
- :mod:`.models`   the MODELS table (logreg, rf, xgboost) and the scikit-learn/imbalanced-learn pipelines
- :mod:`.metrics`  ROC-AUC / accuracy / F1 with percentile-bootstrap confidence intervals
- :mod:`.train`    stratified k-fold training with SMOTE inside the training folds only
- :mod:`.store`    the run directory (skops model files, manifest with checksums), loading and prediction
- :mod:`.bias`     metrics per age band and sex, with counts, CIs and "too small to conclude" flags
- :mod:`.fusion`   image + clinical late fusion for the Wani patients, with paired bootstrap CIs

Needs the ``tabular`` extra: ``pip install '.[tabular]'`` in a checkout.
"""
