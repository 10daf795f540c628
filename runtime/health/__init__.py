"""Line health per camera: camera faults, link, drift, fail rate and compression checks, and their settings."""
