"""Publishing: what readers may see, and when. Icechunk repositories commit each run as one transaction
(``icechunk``), copies and references alike; every target checks the data about to be published first
(``validate``)."""
