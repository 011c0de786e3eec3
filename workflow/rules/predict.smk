# rules: predict (being written)
