"""IPS: Suricata verdicts on decrypted traffic cut the original encrypted connections."""
