"""The run engine: planning, model files, the test process, LoadGen's SUTs, dispatch, calibration, scoring."""
