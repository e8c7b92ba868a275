# Rules of the flow stage.
