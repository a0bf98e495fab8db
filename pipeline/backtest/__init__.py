"""``meshwatch backtest``: the detectors over recorded history, offline.

Inputs (:mod:`pipeline.backtest.inputs`): JSON lines of GoldenBatches or
GoldenSamples, a CSV of GoldenSamples, a time range of the golden topic, or
a plain ``timestamp,value`` CSV of one metric mapped onto synthetic
GoldenSamples. Outputs (:mod:`pipeline.backtest.run`): per-point scores and
findings as CSV and JSON, and PNG charts of the series with its expected
band and the flagged windows.
"""
