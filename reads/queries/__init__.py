"""Hand-written SQL on the read pool: each statement sits right above the one function that runs it.

Every statement returns its whole view as one JSON value, built in SQL (``json_agg`` for nested
items and pages), so a request is one round trip and the rows map straight into the shared view.
"""
