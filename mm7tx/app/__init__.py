"""The running application: the service that wires everything, workers, the
``twistd`` plugin's options, health, systemd and co-hosting."""
