"""Reference for tests/metrics.rs: reads float32 scores and uint8 labels, prints scikit-learn's roc_auc_score
and average_precision_score. Usage: sklearn_metrics.py SCORES LABELS"""
import sys

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

scores = np.fromfile(sys.argv[1], dtype="<f4")
labels = np.fromfile(sys.argv[2], dtype=np.uint8)
print(f"{roc_auc_score(labels, scores):.12f} {average_precision_score(labels, scores):.12f}")
