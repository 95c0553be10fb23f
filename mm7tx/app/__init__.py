"""The running application: the service that wires everything, workers, the
``twistd`` plugin's options, logs, health, systemd and co-hosting."""
