"""Running a config: build.py (objects and their checks), fit.py (train.py), evaluate.py
(eval.py: the validation code of training, via Trainer.validate), results.py (results.json)."""
