from vggfeat.cli import main

main()
