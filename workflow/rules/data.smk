# rules: data (being written)
