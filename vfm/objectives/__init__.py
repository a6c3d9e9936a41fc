"""What is optimised: one module per objective, each registered in OBJECTIVES."""
