"""Search a folder of one's own photos: the model it is described with (``model``), the cached
index (``index``), search (``search``), notebook 08's views (``view``) and an example folder
(``examples``)."""
