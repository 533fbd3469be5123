"""Components to run cardbridge without sound hardware: virtual cards, private JACK and D-Bus, udev events (test, demo and benchmark processes)."""
