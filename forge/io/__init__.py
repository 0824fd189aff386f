"""Reading sources and writing storage: downloads, storage roots, file openers, secrets."""
