"""Who may take part: device identities and credentials (``fedge enroll``), and the broker files built from them."""
