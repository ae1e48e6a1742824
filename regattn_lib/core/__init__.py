"""The method's mathematics: R-MAC regions, pooling, regional attention, PCA-whitening, the
descriptor, search, query expansion, evaluation and statistics. Pure functions and thin
modules, no file or network I/O beyond a whitening's own save and load."""
