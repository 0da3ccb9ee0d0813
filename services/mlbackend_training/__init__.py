"""Training pipeline of mlbackend: data, features, split, fit, evaluate, gate, report.

The modules here know no gRPC and call no service. Each step is a plain function
over typed values, so a caller (the local runner today, ``mlbackend train`` once the
registry and feature store land) can replace any of them:

- ``fraud_data``: the synthetic transaction generator of the fraud case study;
- ``fraud_features``: leakage-free per-user features and their feature-store rows;
- ``pipeline``: split, estimator allow-list, threshold, evaluation, baselines, gate;
- ``report``: curves, confusion matrix and the model card;
- ``run_local``: the whole run without services, artifacts under ``runs/<id>/``.
"""
