"""The gateway's logic: the processors that turn MM7 transactions into mail,
and the delivery reports back to the VASPs."""
