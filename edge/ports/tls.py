"""TLS contexts for MicroPython's ssl module (unix port and boards alike).

MicroPython's client context defaults to CERT_NONE and its mbedtls is built without PEM parsing,
so the CA file provisioning ships (PEM) is converted to DER here and verification is switched on.
"""


def micropython_context(broker, log):
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if broker.get("ca_file"):
        # In MicroPython's ssl since 1.21 (docs: SSLContext.verify_mode), missing from the 1.29 stubs.
        ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]
        for der in der_certs(broker["ca_file"]):
            ctx.load_verify_locations(cadata=der)
    else:
        # No system CA store on the device: say loudly that nothing is verified.
        log("tls without ca_file: the broker's certificate is NOT verified")
    if broker.get("certfile"):
        # This gateway's own certificate (brokers that require one, docs/provisioning.md "TLS"),
        # as DER for the same reason as the CA; the key is read once here and not kept.
        ctx.load_cert_chain(der_certs(broker["certfile"])[0], der_certs(broker["keyfile"], b"PRIVATE KEY")[0])
    return ctx


def der_certs(path, label=b"CERTIFICATE"):
    """The `label` blocks of a PEM (or DER) file as DER bytes, one per block (certificates by
    default; b"PRIVATE KEY" also matches "EC PRIVATE KEY").

    MicroPython's mbedtls is built without PEM parsing (extmod/mbedtls/mbedtls_config_common.h
    has no MBEDTLS_PEM_PARSE_C), so load_verify_locations says "invalid cert" to the PEM CA file
    provisioning ships; the base64 body between the armour lines is the DER it does accept.
    """
    import binascii

    with open(path, "rb") as f:
        data = f.read()
    if b"-----BEGIN" not in data:
        return [data]
    out = []
    body = None
    for line in data.split(b"\n"):
        line = line.strip()
        if line.startswith(b"-----BEGIN") and line.endswith(label + b"-----"):
            body = []
        elif line.startswith(b"-----END"):
            if body:
                out.append(binascii.a2b_base64(b"".join(body)))
            body = None
        elif body is not None:
            body.append(line)
    if not out:
        raise ValueError("%s: no %s block" % (path, label.decode()))
    return out
