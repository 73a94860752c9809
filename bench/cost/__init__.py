"""The cost preview before a GPU is rented: parameter counts on the meta device, the memory estimate
and the FakeTensor trace of real training steps."""
