"""MM7 over HTTP: the site and resource that take requests, their
authentication and limits, and the MM7 client."""
