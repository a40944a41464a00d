"""Running a stage: builders (objects from config), the fit function (run), strategies, precision plugins,
callbacks (progress, the anchor probe), loggers and checkpoint I/O."""
