from mlpi.cli import main

main()
