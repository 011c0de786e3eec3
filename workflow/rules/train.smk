# rules: train (being written)
