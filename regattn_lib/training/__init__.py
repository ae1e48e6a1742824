"""Training of the regional attention (see ``loop``): ``config``, ``augment``, ``data``,
``model``, ``checkpoint``, ``loop`` and the entry points in ``routes``."""
