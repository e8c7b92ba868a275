# Rules of the affinity stage.
