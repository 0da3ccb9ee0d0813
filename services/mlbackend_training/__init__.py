"""Training pipeline of mlbackend: data, features, split, fit, evaluate, gate, report.

Each step is a plain function over typed values, so a caller (the local runner, or
``mlbackend train fraud`` through the suite) can replace any of them. Only
``fraud_store`` and ``train_flow`` call services; the rest knows no gRPC:

- ``fraud_data``: the synthetic transaction generator of the fraud case study;
- ``fraud_features``: leakage-free per-user features and their feature-store rows;
- ``pipeline``: split, estimator allow-list, threshold, evaluation, baselines, gate;
- ``report``: curves, confusion matrix and the model card;
- ``run_local``: the whole run without services, artifacts under ``runs/<id>/``;
- ``fraud_store``: feature definitions, rows and point-in-time training sets in the
  feature store (the ``featurize`` step when training through the suite);
- ``train_flow``: champion re-evaluation, registration, attachments, promotion or an
  audit note.
"""
