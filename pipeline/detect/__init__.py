"""The detector stage: GoldenBatches in, Findings out."""
