"""What a maintainer checks before a contributed recipe's full build (``forge check``): its meta.yaml,
that it loads, a pruned build, and CF checks of the result (:mod:`forge.check.cf`)."""
