from lowformer.cli import main

main()
