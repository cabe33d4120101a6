"""The learned backward (Geometric Correspondence Fields, Grabner et al. 2020): ground-truth
fields from the G-buffer (`field`), the network that predicts them (`network`), its training
pairs (`pairs`) and training (`train`)."""
