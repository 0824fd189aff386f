"""Publishing: what readers may see, and when. Icechunk targets commit each run as one transaction
(``icechunk``); both formats check the data about to be published first (``validate``)."""
