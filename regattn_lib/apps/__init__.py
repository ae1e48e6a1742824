"""What people use: the query explorer, own-photo search and the command line."""
