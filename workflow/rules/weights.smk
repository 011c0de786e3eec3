# rules: weights (being written)
