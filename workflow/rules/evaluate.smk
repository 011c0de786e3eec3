# rules: evaluate (being written)
