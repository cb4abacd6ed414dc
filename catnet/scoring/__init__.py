"""From a network's logits and features to answers: calibration (temperature), the open-set
check, metrics, and the one decision per picture. Training and using a model both reach it."""
