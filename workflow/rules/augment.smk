# rules: augment (being written)
