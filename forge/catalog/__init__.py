"""The STAC catalog of a target root: written after every build or append (``catalog``), made with
pystac from the data and meta.yaml (``stac``), and read to open datasets (:func:`open_dataset`); and the
checks a contributed recipe passes (``check``)."""
