"""Device identity: the fleet CA, one-time enrollment and the broker's config.

    ca            FleetCA: device and server certificates
    enrollment    one-time tokens in, a certificate (or a simulation password) out
    broker_config the one Mosquitto config and ACL renderer
    certificates  the table of issued device certificates (enrolled, renewed, revoked)
    crl           the CA's revocation list and the broker copies of it (`crlfile`)
"""
