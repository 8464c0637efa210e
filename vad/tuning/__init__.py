"""Tuning: an Optuna study over the plan's ``tuning:`` space (``main.py --mode tune``)."""
