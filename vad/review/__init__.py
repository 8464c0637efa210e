"""The review store: scored images kept for a person's verdict, the queue they are shown in, and the verdicts.

``review/`` beside the plan file holds ``images/<id><ext>`` (copies of scored images), ``index.jsonl`` (one line
per kept image: :mod:`vad.review.entries`), and ``feedback.csv`` (the verdicts, in the train data's format:
:mod:`vad.review.feedback`). :mod:`vad.review.store` keeps images within a size cap, :mod:`vad.review.queue`
orders them by how much a verdict would teach the model. The user's own data is never touched.
"""
