"""Named limits, each with its reason. Every number a peer could push against is here."""

# Largest frame body. The largest legitimate frame is client_proof/server_proof: an ECDSA P-256
# certificate is ~500 bytes DER (~700 base64), so 64 KiB leaves room for long SAN lists while
# bounding what one unauthenticated peer can make us buffer. (h11 uses 16 KiB for headers;
# nginx's default large_client_header_buffers is 4 x 8 KiB.)
MAX_FRAME_BODY = 64 * 1024

# Certificates travel base64-encoded inside frames; 16 KiB DER is far above any certificate this
# project makes and well under the frame cap.
MAX_CERTIFICATE_DER = 16 * 1024

# An OpenSSH public key line: a 16384-bit RSA key is ~2.8 KiB; ed25519 ~100 bytes.
MAX_SSH_KEY_LINE = 8 * 1024
MAX_SSH_HOST_KEYS = 16

# An identity file (identity.key, identity.crt, on either side; a rotation's identity.next.*) is
# PEM: a P-256 key is ~240 bytes, its self-signed certificate ~700. 64 KiB is far above anything
# this project writes (even an RSA-16384 key is ~12 KiB of PEM) and keeps a wrong or damaged file
# (a disk image, a file extended to 300 MB) from being read into memory.
MAX_IDENTITY_FILE = 64 * 1024

# Requester names are DNS-label-like and end up in file names and logs.
MAX_NAME = 64

# Error frames: a code and a one-line message.
MAX_ERROR_MESSAGE = 512
# An error frame's optional retry_after (seconds): a day bounds what a peer can make a requester
# wait; the agent's longest back-off is 300 s.
MAX_RETRY_AFTER = 86400

# Per-phase deadlines (seconds) the drivers in agent/ and requester/ enforce. SRP costs ~10 ms per
# side with the OpenSSL backend and a TLS 1.3 handshake ~2 ms on loopback; 15 s per phase covers
# a busy appliance on a slow WAN while freeing a stalled peer's slot quickly.
PHASE_TIMEOUT = 15.0
# The whole enrollment, end to end, from the first byte to "enrolled".
ENROLLMENT_TIMEOUT = 60.0
# Persisting the authorization is local disk work (fsync), not a peer wait.
PERSIST_TIMEOUT = 30.0
