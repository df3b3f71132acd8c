"""Protocol front ends: each translates its wire format to the data plane and back."""
