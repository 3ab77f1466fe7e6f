"""The back-to-back user agent: calls bridged between independent SIP legs."""
